"""HL7 v2: reading, building and MLLP transport."""
