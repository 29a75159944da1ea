"""The job-centre side: plain JSON over HTTPS, translated to and from MedCom-like Bundles."""
