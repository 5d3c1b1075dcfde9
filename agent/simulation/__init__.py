"""Simulation: workload, simulated NVML devices and simulated inference servers (demo and tests)."""
