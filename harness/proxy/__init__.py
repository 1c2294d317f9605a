"""`harness proxy`: shadow deployment on live traffic. Production keeps calling the API it trusts through the
proxy (`server`), which passes every request and answer through unchanged; a sampled share is copied to the
candidates off the caller's path (`mirror`), both answers are read (`wire`), redacted (`privacy`), judged
against each other and stored as a run, with the stop rule on the status page; `export` turns a proxy run's
traffic into a suite.
"""
