"""Benchmarks for PRODUCT.md §8; each is a standalone script (see docs/benchmarks.md)."""
