"""GPU telemetry: the GpuBackend protocol, the NVML backend and energy metering."""
