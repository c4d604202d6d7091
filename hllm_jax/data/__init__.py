"""Data: HLLM CSV readers, item text tokenisation, dataset statistics, a synthetic dataset."""
