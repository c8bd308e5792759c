"""polyplan.executor"""
