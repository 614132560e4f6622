"""Named models: specs, preprocessing, architectures, the zoo, the session cache and weight sources."""
