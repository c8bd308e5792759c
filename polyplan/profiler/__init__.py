"""polyplan.profiler"""
