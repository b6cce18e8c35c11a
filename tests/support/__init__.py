"""Helpers the tests share: real `aelab` processes, tiny models and trainers, killed runs."""
