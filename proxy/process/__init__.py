"""The serving process: signals and the serve loop, exposure warnings, pre-forked workers."""
