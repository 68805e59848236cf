"""Throughput and cost benchmark of the txrelay milter against Postfix alone and OpenDKIM."""
