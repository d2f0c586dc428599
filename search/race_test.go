//go:build race

package search

// raceEnabled is true under the race detector, which makes SQLite (C
// translated to Go) some twenty times slower: TestSearchScale then runs
// with fewer events, so that the package's tests stay within half a
// minute.
const raceEnabled = true
