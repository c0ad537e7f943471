"""Guards: what stands between a finding and a side effect. State lives in Redis."""
