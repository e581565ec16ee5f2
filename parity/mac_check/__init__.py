"""`hrmc lower --mac-check`: the NAME.check/ folder written beside a Core ML package (bundle.py), and the
stand-alone script it ships as NAME.check/check.py (check.py, copied verbatim: it never imports hrmc, so the
float16 rule and the verdict's arithmetic that the gate shares with it live there)."""
