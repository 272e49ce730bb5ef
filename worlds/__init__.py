"""Small, fully trained model worlds that tests, benchmarks and later features measure their effect on."""
