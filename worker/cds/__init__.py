"""CDS Hooks 2.0 services: the guideline at order entry, from the same rules as the HL7 path."""
