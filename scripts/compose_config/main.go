// compose-config: loads a compose file with Compose v2's own loader (github.com/compose-spec/compose-go/v2), as
// `docker compose config` does, without a Docker engine: the compose-spec schema, variable interpolation (from
// the environment and .env), merges and extends, normalization and the consistency checks (undefined services,
// volumes, networks). Prints the resolved model as YAML, or nothing with -q; warnings (an unset variable) go to
// stderr; exit 1 on an invalid file. Used by tests/unit/test_compose.py; built by scripts/compose_config.sh.
//
//	compose-config [-f FILE]... [-q] [--format yaml|json]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

type files []string

func (f *files) String() string     { return fmt.Sprint(*f) }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var paths files
	flag.Var(&paths, "f", "compose file (repeatable; default: compose.yaml, docker-compose.yml, ... in the working directory)")
	quiet := flag.Bool("q", false, "only validate: print nothing")
	format := flag.String("format", "yaml", "output format: yaml or json")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments: %v", flag.Args()))
	}

	workdir := ""
	if len(paths) > 0 {
		workdir = filepath.Dir(paths[0])
	}
	options, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(workdir),
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithDefaultProfiles(),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	if *quiet {
		return
	}
	var out []byte
	switch *format {
	case "yaml":
		out, err = project.MarshalYAML()
	case "json":
		out, err = project.MarshalJSON()
	default:
		err = fmt.Errorf("unknown format %q: yaml or json", *format)
	}
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
