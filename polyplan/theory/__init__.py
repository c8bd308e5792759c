"""polyplan.theory"""
