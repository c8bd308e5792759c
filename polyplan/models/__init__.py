"""polyplan.models"""
