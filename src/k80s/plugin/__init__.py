"""k80s.plugin"""
