"""Integrations of tq with web frameworks: `tq.contrib.django`.

Each imports tq (and its stores and database queue); nothing in tq imports
them, and each needs its framework installed (an extra such as `tq[django]`).
"""
