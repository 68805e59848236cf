#!/usr/bin/perl
# A second DKIM verifier, independent of dkimpy: Perl's Mail::DKIM (Debian libmail-dkim-perl).
#
# Usage: mail_dkim_verify.pl KEYS FILE...
#   KEYS: lines "selector._domainkey.domain<TAB>TXT record", answered instead of DNS.
#   FILE: one message each, CRLF line ends, as the next hop received it.
# Prints one line per file: "FILE<TAB>domain=result (detail); ..." for each signature, or
# "FILE<TAB>none" when it has none. Mail::DKIM 1.20230212 verifies RSA only (no Ed25519).
use strict;
use warnings;

use Mail::DKIM::Verifier;
use Net::DNS;

my ($keys_file, @messages) = @ARGV;
die "usage: $0 KEYS FILE...\n" unless defined $keys_file;

my %records;
open(my $keys, '<', $keys_file) or die "$keys_file: $!\n";
while (my $line = <$keys>) {
    chomp $line;
    my ($name, $value) = split /\t/, $line, 2;
    $records{lc $name} = $value if defined $value;
}
close $keys;

{
    no warnings 'redefine';
    # The tests' keys are in PostgreSQL, not in DNS: answer TXT queries from KEYS.
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        my $value = $records{lc $domain};
        if (!defined $value || uc $type ne 'TXT') {
            $@ = 'NXDOMAIN';
            return;
        }
        my @strings = ($value =~ /(.{1,255})/gs);
        $@ = 'NOERROR';
        return Net::DNS::RR->new(name => $domain, type => 'TXT', txtdata => \@strings);
    };
}

for my $file (@messages) {
    open(my $in, '<:raw', $file) or die "$file: $!\n";
    my $verifier = Mail::DKIM::Verifier->new();
    while (my $chunk = <$in>) {
        $verifier->PRINT($chunk);
    }
    close $in;
    $verifier->CLOSE();
    my @results = map {
        my $detail = $_->result_detail;
        sprintf('%s=%s (%s)', $_->domain, $_->result, $detail)
    } $verifier->signatures;
    printf "%s\t%s\n", $file, @results ? join('; ', @results) : 'none';
}
