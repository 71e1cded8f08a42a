"""Log watching: tail files, read four formats, assemble tracebacks, classify and count them."""
