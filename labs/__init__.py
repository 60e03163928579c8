"""Exercises: each labs/labN/ holds exercises.py (stubs with TODOs for the reader), reference.py
(the same names bound to the reference solutions in common/) and test_*.py (the grader)."""
