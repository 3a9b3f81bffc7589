"""Real cgroup lookup: which cgroup a process is in, and the id ioband classifies it by."""
