"""MedCom-side adapter: builds the MedCom-like FHIR messages the gateway sends."""
