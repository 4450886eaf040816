import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import { api, call, getToken, setToken } from "./api/client";

const EMAIL_KEY = "fedlora.email";

interface AuthState {
  signedIn: boolean;
  email: string | null;
  /** Message shown on the sign-in page after an involuntary sign-out. */
  notice: string | null;
  signIn: (email: string, password: string) => Promise<void>;
  signOut: (notice?: string) => void;
}

const AuthContext = createContext<AuthState | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [token, setTok] = useState<string | null>(() => getToken());
  const [email, setEmail] = useState<string | null>(() => sessionStorage.getItem(EMAIL_KEY));
  const [notice, setNotice] = useState<string | null>(null);

  const signIn = useCallback(async (addr: string, password: string) => {
    const data = await call(api.POST("/api/v1/auth/login", { body: { email: addr, password } }));
    setToken(data.access_token);
    sessionStorage.setItem(EMAIL_KEY, addr);
    setEmail(addr);
    setNotice(null);
    setTok(data.access_token);
  }, []);

  const signOut = useCallback((message?: string) => {
    setToken(null);
    sessionStorage.removeItem(EMAIL_KEY);
    setTok(null);
    setEmail(null);
    setNotice(typeof message === "string" ? message : null);
  }, []);

  const value = useMemo(
    () => ({ signedIn: token !== null, email, notice, signIn, signOut }),
    [token, email, notice, signIn, signOut],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthState {
  const ctx = useContext(AuthContext);
  if (!ctx) throw new Error("useAuth outside AuthProvider");
  return ctx;
}
