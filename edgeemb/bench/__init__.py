"""`edgeemb bench`: load time, latency, throughput and peak memory of a model file in the runtime a
device runs it in (`run.bench`), optionally under a device profile's limits on this host
(`devices`, `limits`). Kept free of imports: the measuring process (`worker`) loads only numpy and
its runtime, so its peak RSS is the model's and the runtime's, not edgeemb's."""
