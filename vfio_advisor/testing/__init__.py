"""Public fixtures for the tests, examples/demo-host and bench/: one host tree
builder and dump loader (hosttree, with procstat), and the shared example hosts and domains
(scenes). Not used by the tool itself; nothing here is imported at run time."""
