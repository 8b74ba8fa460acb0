"""The `gpulet` command line: one module per noun, all over `gpulet.Client`."""
