"""The command line: the parser, the commands and the generated CLI reference."""
