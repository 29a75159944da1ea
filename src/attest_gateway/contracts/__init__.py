"""The wire models other systems rely on: the job-centre API, stage and contact events, the
envelope, audit entries.
"""
