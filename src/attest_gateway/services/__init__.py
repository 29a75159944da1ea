"""The use cases: requesting an attest, submitting and delivering MedCom messages, mailboxes,
contacts, administration.
"""
