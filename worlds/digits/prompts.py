"""The words and prompt templates of the digits world.

Every template in TRAIN_TEMPLATES was used to train the model. Later work that edits the model (LoRA
training, concept erasure) builds its edit with BUILD_TEMPLATES only and checks that the edit carries over
to HELD_OUT_TEMPLATES, phrasings the edit never saw.
"""

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {word} is the digit's name ("seven"), {numeral} its figure ("7").
BUILD_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {numeral}",
    "a {numeral}",
    "{word}",
    "the digit {word}",
    "a handwritten {numeral}",
    "number {word}",
)
HELD_OUT_TEMPLATES = (
    "{numeral}",
    "a picture of the digit {word}",
    "a drawing of a {numeral}",
    "a written {word}",
)
TRAIN_TEMPLATES = BUILD_TEMPLATES + HELD_OUT_TEMPLATES

DEFAULT_TEMPLATE = "a handwritten digit {word}"

# Words that get a token of their own (numerals are single characters and have one already).
VOCABULARY_WORDS = tuple(
    sorted(set(DIGIT_WORDS) | {"a", "the", "handwritten", "digit", "number", "picture", "of", "drawing", "written"})
)


def prompt(digit: int, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt asking for `digit` in the phrasing `template`."""
    return template.format(word=DIGIT_WORDS[digit], numeral=str(digit))
