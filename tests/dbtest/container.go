package dbtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// DefaultImage is the PostgreSQL image testcontainers starts unless
// OAUTHSTORE_TEST_POSTGRES_IMAGE names another.
const DefaultImage = "postgres:15-alpine"

// startContainer starts PostgreSQL through testcontainers-go when a Docker engine answers.
func startContainer(ctx context.Context) (string, func() error, error) {
	if err := dockerAnswers(ctx); err != nil {
		return "", nil, err
	}
	image := os.Getenv("OAUTHSTORE_TEST_POSTGRES_IMAGE")
	if image == "" {
		image = DefaultImage
	}
	ctr, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
		testcontainers.WithCmdArgs("-c", "fsync=off", "-c", "synchronous_commit=off",
			"-c", "full_page_writes=off", "-c", "max_connections=300"),
	)
	if err != nil {
		if ctr != nil {
			_ = ctr.Terminate(context.Background())
		}
		return "", nil, fmt.Errorf("start %s: %w", image, err)
	}
	url, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = ctr.Terminate(context.Background())
		return "", nil, err
	}
	stop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return ctr.Terminate(ctx)
	}
	return url, stop, nil
}

// dockerAnswers reports whether a Docker engine responds within a few seconds.
func dockerAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return fmt.Errorf("no Docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return errors.New("no Docker engine answers")
	}
	return nil
}
