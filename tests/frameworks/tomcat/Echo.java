// The Tomcat oracle of the differential harness: embedded Tomcat 10 (Debian's libtomcat10-java)
// with one servlet on /*, echoing as JSON what it parsed. The path is what the servlet API hands
// an application (getServletPath + getPathInfo: decoded, path parameters removed, dot segments
// resolved); the handler is chosen from that path as a Spring/Jersey app would. Two binders read
// the ids: the servlet API itself (getParameter: exact name, first value) and a case-insensitive
// one as ASP.NET Core's model binding and Jackson's ACCEPT_CASE_INSENSITIVE_PROPERTIES read them
// (Jackson for real, from Debian's libjackson2-databind-java). POST with a `_method` parameter
// is turned into that method as Spring's HiddenHttpMethodFilter does.
//
// Prints "PORT <n>" on stdout once listening on 127.0.0.1:<n>; exits when stdin closes (the
// test process that started it is gone).

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.MapperFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import org.apache.catalina.Context;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;

public class Echo extends HttpServlet {
    // Requests the app code saw, by X-Fapi-Interaction-Id (the harness asks per request).
    static final Map<String, Integer> SEEN = new ConcurrentHashMap<>();
    static final ObjectMapper PLAIN = new ObjectMapper();
    // The case-insensitive binder: a payment bound to a class, as a Spring/JAX-RS app does.
    static final ObjectMapper CI = JsonMapper.builder()
            .enable(MapperFeature.ACCEPT_CASE_INSENSITIVE_PROPERTIES)
            .disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
            .build();

    public static class PaymentData { public String ConsentId; }
    public static class Payment { public PaymentData Data; }

    @Override
    protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        String path = req.getServletPath() + (req.getPathInfo() == null ? "" : req.getPathInfo());
        if (path.startsWith("/__seen/")) {
            resp.setContentType("text/plain");
            resp.getWriter().print(SEEN.getOrDefault(path.substring(8), 0));
            return;
        }
        String fapiId = req.getHeader("x-fapi-interaction-id");
        SEEN.merge(fapiId == null ? "" : fapiId, 1, Integer::sum);
        String method = req.getMethod();
        String override = req.getParameter("_method");
        if (method.equals("POST") && override != null) {
            String m = override.toUpperCase(Locale.ENGLISH);
            if (m.equals("PUT") || m.equals("DELETE") || m.equals("PATCH")) method = m;
        }
        byte[] body = req.getInputStream().readAllBytes();
        ObjectNode out = PLAIN.createObjectNode();
        ArrayNode ids = PLAIN.createArrayNode();
        String[] seg = path.length() > 1 ? path.substring(1).split("/", -1) : new String[0];
        String handler = "none";
        int n = seg.length;
        if (n == 1 && seg[0].equals("accounts") && method.equals("GET")) {
            handler = "accounts.list";
            String v = req.getParameter("accountId");
            if (v != null) id(ids, "accountId", "query", v);
            String ci = caseInsensitiveQuery(req, "accountId");
            if (ci != null) id(ids, "accountId", "query-ci", ci);
        } else if (n == 2 && seg[0].equals("accounts") && (method.equals("GET") || method.equals("DELETE"))) {
            handler = method.equals("GET") ? "accounts.get" : "accounts.delete";
            id(ids, "AccountId", "path", seg[1]);
        } else if (n == 1 && seg[0].equals("payments") && method.equals("POST")) {
            handler = "payments.create";
            try {
                Map<?, ?> doc = PLAIN.readValue(body, Map.class);
                Object data = doc.get("Data");
                if (data instanceof Map<?, ?> d && d.get("ConsentId") != null) {
                    id(ids, "ConsentId", "body", String.valueOf(d.get("ConsentId")));
                }
            } catch (Exception e) {
                out.put("body_error", "plain: " + e.getClass().getSimpleName());
            }
            try {
                Payment p = CI.readValue(body, Payment.class);
                if (p != null && p.Data != null && p.Data.ConsentId != null) {
                    id(ids, "ConsentId", "body-ci", p.Data.ConsentId);
                }
            } catch (Exception e) {
                out.put("body_error_ci", e.getClass().getSimpleName());
            }
        } else if (n == 2 && seg[0].equals("payments") && method.equals("GET")) {
            handler = "payments.get";
            id(ids, "PaymentId", "path", seg[1]);
        } else if (n == 3 && seg[0].equals("payments") && seg[2].equals("details") && method.equals("GET")) {
            handler = "payments.details";
            id(ids, "PaymentId", "path", seg[1]);
        } else if (n == 1 && seg[0].equals("details") && method.equals("GET")) {
            handler = "details.internal";
        } else if (n == 1 && seg[0].equals("statements") && method.equals("GET")) {
            handler = "statements.list";
            for (var e = req.getHeaders("x-account-id"); e.hasMoreElements();) {
                id(ids, "x-account-id", "header", e.nextElement());
            }
        } else if (n == 2 && seg[0].equals("consents") && (method.equals("GET") || method.equals("DELETE"))) {
            handler = method.equals("GET") ? "consents.get" : "consents.delete";
            id(ids, "ConsentId", "path", seg[1]);
        }
        out.put("framework", "tomcat");
        out.put("method", method);
        out.put("path", path);
        out.put("handler", handler);
        out.set("ids", ids);
        resp.setStatus(handler.equals("none") ? 404 : 200);
        resp.setContentType("application/json");
        resp.getOutputStream().write(PLAIN.writeValueAsBytes(out));
    }

    /** The first value of any query parameter whose name equals `name` ignoring ASCII case. */
    static String caseInsensitiveQuery(HttpServletRequest req, String name) {
        List<String> vals = new ArrayList<>();
        for (Map.Entry<String, String[]> e : req.getParameterMap().entrySet()) {
            if (e.getKey().equalsIgnoreCase(name)) vals.addAll(List.of(e.getValue()));
        }
        // getParameterMap keeps the order in which names first appear: the first one wins.
        return vals.isEmpty() ? null : vals.get(0);
    }

    static void id(ArrayNode ids, String name, String from, String value) {
        ObjectNode o = ids.addObject();
        o.put("name", name);
        o.put("from", from);
        o.put("value", value);
    }

    public static void main(String[] args) throws Exception {
        java.nio.file.Path base = java.nio.file.Files.createTempDirectory("portcullis-tomcat");
        Tomcat t = new Tomcat();
        t.setBaseDir(base.toString());
        Connector c = new Connector();
        c.setPort(0);
        c.setProperty("address", "127.0.0.1");
        t.setConnector(c);
        Context ctx = t.addContext("", base.toString());
        Tomcat.addServlet(ctx, "echo", new Echo());
        ctx.addServletMappingDecoded("/*", "echo");
        t.start();
        System.out.println("PORT " + c.getLocalPort());
        System.out.flush();
        while (System.in.read() != -1) { }
        System.exit(0);
    }
}
