"""k80s.operator"""
