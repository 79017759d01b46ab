"""Numba kernels: pure functions over flat C-contiguous buffers.

They take arrays and scalars, write into the arrays named in their docstrings
and return nothing. They never see Python objects or None; the layers
validate input before calling them.
"""
