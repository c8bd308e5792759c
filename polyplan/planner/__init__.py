"""polyplan.planner"""
