"""What runs inside the worker process: one measurement block of one config. The worker
(`python -m autotuner.measure.worker`) builds the config's runner, drives it through the spec's
scenario (batch, serving, workload) with the harness, the device telemetry, the load meter and
the accuracy check, and writes a plain result file. The driver's side (`autotuner.execution`)
starts it by module name and never imports it; nothing here writes the study.
"""
