"""The delivery tracker: follows Postfix's mail log and writes outcomes to the ledger."""
