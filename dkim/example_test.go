package dkim_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"

	"github.com/jetmail/jetmail/dkim"
)

// The DNS record of an Ed25519 key (here made from a fixed seed; use
// Generate for a real one). It is the line `jetmail dkim keygen` prints.
func ExampleRecord() {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	rec, err := dkim.Record("e2026", "example.com", priv.Public())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rec)
	// Output:
	// e2026._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="
}

// Keys print as their DNS name and algorithm, never as key material.
func ExampleKey_String() {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	k, err := dkim.NewKey("Example.com", "e2026", priv)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(k)
	fmt.Printf("%#v\n", k)
	// Output:
	// e2026._domainkey.example.com (ed25519-sha256)
	// dkim.Key(e2026._domainkey.example.com (ed25519-sha256))
}
