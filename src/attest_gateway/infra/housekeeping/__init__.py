"""What happens because time passes: re-publishing, the MedCom resend rule, retention."""
