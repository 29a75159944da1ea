"""The MedCom FHIR messages: parse, check the rules, read, build (requests, replies, reminders,
translation).
"""
