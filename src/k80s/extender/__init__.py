"""k80s.extender"""
