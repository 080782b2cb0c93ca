"""ldm-autorl: ranked, recorded, relabeled, filtered reference policies."""
