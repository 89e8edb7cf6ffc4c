"""Tests of the library, wsjax: they import nothing from experiments."""
