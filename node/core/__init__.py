"""The node's domain: everything here is free of HTTP."""
