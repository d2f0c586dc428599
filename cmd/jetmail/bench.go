package main

import "github.com/spf13/cobra"

// newBenchCmd is `jetmail bench`: throughput, latency and backlog
// measurements of jetmail against an SMTP sink.
func newBenchCmd(s stdio) *cobra.Command {
	return &cobra.Command{
		Use:     "bench",
		Short:   "Measure jetmail's throughput and latency against a fast SMTP sink",
		Long:    "Measure jetmail's throughput and latency against a fast SMTP sink.",
		Example: "  jetmail bench",
		Args:    noArgs,
		Hidden:  true, // until the implementation lands
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}
