"""The experiment harness: each embedded model's settings (``defaults``) and the head-to-head
comparison of methods (``compare``) that ``safemax compare`` and the benchmarks run."""
