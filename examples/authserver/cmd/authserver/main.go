// Command authserver runs the example authorization server of package authserver on the database
// of DATABASE_URL, which it migrates first, with the pepper ring of OAUTH_AT_REST_PEPPER.
//
//	DATABASE_URL=postgres://… OAUTH_AT_REST_PEPPER=$(openssl rand -base64 32) \
//	AUTHSERVER_CLIENT_SECRET=… AUTHSERVER_RESOURCE_SERVER_SECRET=… \
//	go run ./examples/authserver/cmd/authserver --addr 127.0.0.1:8080
//
// It registers three clients: "demo-app", confidential, with the secret of
// AUTHSERVER_CLIENT_SECRET and the redirect URI http://127.0.0.1:9000/callback; "demo-cli", public
// (PKCE, no secret), redirecting to http://127.0.0.1:9001/callback; and "demo-rs", a resource
// server that introspects tokens, with the secret of AUTHSERVER_RESOURCE_SERVER_SECRET.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/examples/authserver"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	accessTTL := flag.Duration("access-ttl", 10*time.Minute, "lifetime of access tokens")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(*addr, *accessTTL, log); err != nil {
		log.Error("authserver stopped", "err", err)
		os.Exit(1)
	}
}

func run(addr string, accessTTL time.Duration, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	secrets := map[string]string{}
	for _, name := range []string{"AUTHSERVER_CLIENT_SECRET", "AUTHSERVER_RESOURCE_SERVER_SECRET"} {
		if secrets[name] = os.Getenv(name); len(secrets[name]) < 16 {
			return fmt.Errorf("%s: set it to a secret of at least 16 characters", name)
		}
	}
	peppers, err := repository.PepperFromEnv()
	if err != nil {
		return err
	}
	if os.Getenv("DATABASE_URL") == "" {
		return errors.New("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return errors.New("DATABASE_URL is not a valid connection string") // pgx's message would quote it
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		return err
	}
	store, err := repository.New(pool, repository.Config{Peppers: peppers, Logger: log})
	if err != nil {
		return err
	}
	handler, err := authserver.New(store, authserver.Options{
		Clients: []authserver.Client{
			{
				ID: "demo-app", Secret: secrets["AUTHSERVER_CLIENT_SECRET"],
				RedirectURIs: []string{"http://127.0.0.1:9000/callback"},
				Scopes:       []string{"openid", "profile", "offline_access", "api"},
			},
			{
				ID: "demo-cli", RedirectURIs: []string{"http://127.0.0.1:9001/callback"},
				Scopes: []string{"openid", "offline_access", "api"},
			},
			{ID: "demo-rs", Secret: secrets["AUTHSERVER_RESOURCE_SERVER_SECRET"], ResourceServer: true},
		},
		AccessTokenTTL: accessTTL,
		Issuer:         "http://" + addr,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("authserver listening", "addr", addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
