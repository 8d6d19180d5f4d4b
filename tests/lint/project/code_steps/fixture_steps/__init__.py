"""Code steps of the lint fixture project: real functions with various signatures."""
