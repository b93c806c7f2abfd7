"""Performance estimated before labels arrive: calibration on held-out rows, CBPE per
day, and the evidence a retrain needs."""
