"""Jobs: the end-to-end runs behind the command line, composed from the library's stages."""
